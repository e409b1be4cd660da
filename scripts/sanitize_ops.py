"""Every CUDA kernel of fastnas once, forward and backward, for compute-sanitizer
(scripts/gpu_check.sh): odd sizes, every kernel size, the constant strides 1 and 2 and a
run-time stride, planes of one and of several bands, 3 and 11 candidates (the templated and
the general mixed-op kernels), channels_last, float32, float64, float16 and bfloat16."""

import torch

import fastnas
from fastnas import ops

assert fastnas.build_info()["cuda"], "fastnas was built without CUDA kernels"
device = "cuda"
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    x = torch.randn(3, 16, 13, 11, device=device, dtype=dtype, requires_grad=True)
    w1 = torch.randn(24, 4, 1, 1, device=device, dtype=dtype, requires_grad=True)
    ops.shuffle_gconv1x1(x, w1, None, 4, 6).sum().backward()
    tall = torch.randn(2, 8, 75, 9, device=device, dtype=dtype, requires_grad=True)  # 3 bands of rows
    for kernel_size, stride in ((1, 1), (3, 1), (3, 2), (5, 2), (7, 1), (7, 3)):
        for image in (x, tall):
            w2 = torch.randn(image.shape[1], 1, kernel_size, kernel_size, device=device, dtype=dtype,
                             requires_grad=True)
            ops.multi_dilation_dwconv2d(image, w2, (1, 2, 3, 4), stride=stride).sum().backward()
    for count in (3, 11):
        outs = [torch.randn(3, 16, 13, 11, device=device, dtype=dtype, requires_grad=True) for _ in range(count)]
        weights = torch.rand(count, device=device)
        weights[1] = 0
        ops.mixed_op([o if k != 1 else None for k, o in enumerate(outs)], weights.requires_grad_()).sum().backward()
        channels_last = [o.detach().to(memory_format=torch.channels_last).requires_grad_() for o in outs]
        ops.mixed_op(channels_last, torch.rand(count, device=device, requires_grad=True)).sum().backward()
        norms = [torch.nn.BatchNorm2d(16, affine=False).to(device) if k % 2 == 0 else None for k in range(count)]
        ops.batch_norm_mixed_op(outs, torch.rand(count, device=device, requires_grad=True), norms).sum().backward()
    for stride in (1, 2):
        pooled = ops.pool3x3_pair(x, stride)
        (pooled[0] + pooled[1]).sum().backward()
torch.cuda.synchronize()
print("sanitized run finished")
