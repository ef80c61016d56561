"""Export of diffusers Stable Diffusion folders to zoodip's ONNX layout (needs torch)."""
