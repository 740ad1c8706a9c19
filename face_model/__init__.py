"""OpenCV's ResNet-10 SSD face detector ported to PyTorch, its Triton model artifact, and a local Triton launcher.

Needs torch; only the model build, Triton's python backend and the tests import this package.
"""
