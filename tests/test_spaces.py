"""Networks, search spaces and exact cost counting against published numbers and against
counting the built networks."""

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastnas.flops import count
from fastnas.models import dilated_lightnet, layout, shufflenet_v1
from fastnas.spaces import CanasSpace
from fastnas.spaces.nasbench201 import NasBench201Space, nasbench201_benchmark

NATS_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "nasbench201" / "nats_bench.csv"


# ShuffleNet v1 (Zhang et al. 2018, Table 2): MFLOPs at 1x, 224x224, per group count.
@pytest.mark.parametrize("groups, mflops", [(1, 143), (2, 140), (3, 137), (4, 133), (8, 137)])
def test_shufflenet_v1_matches_published_flops(groups, mflops):
    counts = count(shufflenet_v1(groups), torch.zeros(1, 3, 224, 224))
    assert abs(counts.macs / 1e6 - mflops) < 1.5


def test_seed_table1_baselines_cifar10_at_224():
    # Seed 000 Table 1 (CIFAR-10, 224x224 input): ShuffleNet 133M / 0.90M params,
    # Dilated LightNet 134M / 0.90M; CIFAR-100 Dilated LightNet 1.00M params.
    x = torch.zeros(1, 3, 224, 224)
    shuffle = count(shufflenet_v1(4, num_classes=10), x)
    dilated = count(dilated_lightnet(4, num_classes=10), x)
    dilated100 = count(dilated_lightnet(4, num_classes=100), x)
    assert abs(shuffle.macs / 1e6 - 133) < 1.5 and abs(shuffle.params / 1e6 - 0.90) < 0.015
    assert abs(dilated.macs / 1e6 - 134) < 1.5 and abs(dilated.params / 1e6 - 0.90) < 0.015
    assert abs(dilated100.params / 1e6 - 1.00) < 0.015


def test_canas_space_floor_is_the_seeds_83_mflops():
    space = CanasSpace("imagenet")
    cheapest = space.cheapest()
    assert all(space.unit_spec(c).groups == 8 and not space.unit_spec(c).dilated for c in cheapest)
    # Seed 000: "the cheapest network with these channels is 83M".
    assert 82e6 < space.flops(cheapest) < 85e6


@pytest.mark.parametrize("variant, size, channels", [("imagenet", 224, 3), ("cifar", 32, 3), ("mnist", 28, 1)])
def test_canas_costs_equal_counting_the_built_network(variant, size, channels):
    space = CanasSpace(variant, num_classes=10)
    generator = torch.Generator().manual_seed(7)
    for arch in [space.sample(generator) for _ in range(3)] + [space.costliest()]:
        counts = count(space.build(arch), torch.zeros(1, channels, size, size))
        assert space.flops(arch) == counts.macs
        assert space.params(arch) == counts.params


def test_flop_counter_mode_counts_fastnas_ops():
    net = shufflenet_v1(3)
    x = torch.zeros(1, 3, 224, 224)
    with FlopCounterMode(display=False) as counter:
        net(x)
    assert counter.get_total_flops() == 2 * count(net, x).macs


def test_canas_supernet_path_equals_extracted_network():
    space = CanasSpace("mnist")
    supernet = space.supernet().eval()
    arch = space.sample(torch.Generator().manual_seed(3))
    network = supernet.extract(arch).eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(supernet(x, arch), network(x))
    one_hot = [torch.nn.functional.one_hot(torch.tensor(c), 8).float() for c in arch]
    torch.testing.assert_close(supernet.forward_weighted(x, one_hot), network(x))


def test_fused_and_plain_networks_agree():
    space = CanasSpace("cifar", num_classes=10)
    arch = (4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3)
    fused = space.build(arch, fused=True).eval()
    plain = space.build(arch, fused=False).eval()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-4, atol=1e-5)


def test_bad_architectures_are_rejected():
    space = CanasSpace("cifar")
    with pytest.raises(ValueError, match="16 decisions, got 3"):
        space.flops([0, 1, 2])
    with pytest.raises(ValueError, match=r"decision 2 must be in \[0, 8\), got 9"):
        space.build([0, 0, 9] + [0] * 13)
    with pytest.raises(ValueError, match="stage width 100 is not divisible by groups=8"):
        CanasSpace(macro=layout("cifar", stage_channels=(100, 200, 400)))


def test_nasbench201_costs_match_published_range():
    # NAS-Bench-201 (CIFAR-10): FLOPs 7.78M .. 220.11M, params 0.073M .. 1.531M.
    space = NasBench201Space()
    all_conv3, all_none = (3,) * 6, (0,) * 6
    assert round(space.flops(all_conv3) / 1e6, 2) == 220.12
    assert round(space.params(all_conv3) / 1e6, 3) == 1.532
    assert round(space.flops(all_none) / 1e6, 2) == 7.78
    assert round(space.params(all_none) / 1e6, 3) == 0.073
    arch = (2, 4, 3, 1, 0, 3)
    counts = count(space.build(arch), torch.zeros(1, 3, 32, 32))
    assert (space.flops(arch), space.params(arch)) == (counts.macs, counts.params)


def test_nasbench201_string_round_trip():
    space = NasBench201Space()
    text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    assert space.encode(space.decode(text)) == text
    with pytest.raises(ValueError, match="malformed NAS-Bench-201 architecture string"):
        space.decode("|nor_conv_3x3~0|+|bogus~0|")


def test_tabular_benchmark_reads_the_real_format(tmp_path):
    csv_file = tmp_path / "bench.csv"
    csv_file.write_text(
        "CIFAR10TestAccuracy200Epochs,CIFAR100TestAccuracy200Epochs,ImageNetTestAccuracy200Epochs,"
        "ArchitectureString,UniqueString\n"
        "93.5,70.1,44.0,|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|,x\n"
    )
    bench = nasbench201_benchmark(csv_file, "cifar100")
    assert bench.query((3, 3, 4, 1, 3, 1)) == 70.1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"no column \['ArchitectureString', 'CIFAR10TestAccuracy200Epochs'\]"):
        nasbench201_benchmark(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nasbench201_benchmark(tmp_path / "missing.csv")


@pytest.mark.skipif(not NATS_CSV.exists(), reason="shared NAS-Bench-201 table not present")
def test_tabular_benchmark_full_table():
    bench = nasbench201_benchmark(NATS_CSV)
    assert len(bench) == 15625
    # The best CIFAR-10 cell of NAS-Bench-201 reaches 94.37%.
    assert round(max(bench.accuracy.values()), 2) == 94.37


def test_enas_chain_space_size_decoding_and_costs():
    from fastnas.spaces.enas_chain import EnasChainSpace, decode

    space = EnasChainSpace(channels=8, num_classes=10, in_channels=1, input_size=12)
    # seed 003: 5^6 * 2^15 architectures
    assert space.size() == 5 ** 6 * 2 ** 15
    arch = space.validate([1, 4, 0, 2, 1, 1, 3, 0, 1, 0, 0, 0, 0, 1, 1, 2, 1, 1, 1, 1, 1])
    nodes = decode(arch)
    assert nodes[0] == (1, []) and nodes[1] == (4, []) and nodes[2] == (2, [0, 1])
    assert nodes[5] == (2, [0, 1, 2, 3, 4])
    assert "2:avg_pool" in space.encode(arch)
    counts = count(space.build(arch), torch.zeros(1, 1, 12, 12))
    assert (space.flops(arch), space.params(arch)) == (counts.macs, counts.params)
    supernet = space.supernet().eval()
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(supernet(x, arch), supernet.extract(arch).eval()(x))


@pytest.mark.parametrize("multilevel", [False, True])
def test_darts_genotype_space_interface_and_exact_costs(multilevel):
    from fastnas.spaces.darts import DartsGenotypeSpace, Genotype

    space = DartsGenotypeSpace(channels=8, layers=5, multilevel=multilevel)
    assert len(space.decisions) == 16 * len(space.keys)
    generator = torch.Generator().manual_seed(1)
    for arch in [space.sample(generator) for _ in range(2)]:
        genotype = space.genotype(arch)
        assert isinstance(genotype, Genotype) and set(genotype.cells) == set(space.keys)
        counts = count(space.build(arch), torch.zeros(1, 3, 32, 32))
        assert (space.flops(arch), space.params(arch)) == (counts.macs, counts.params)
    with pytest.raises(ValueError, match="decision 0 must be in"):
        space.flops([5] + [0] * (len(space.decisions) - 1))
