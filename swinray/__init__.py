"""SwinRay: Ray-distributed self-supervised Swin UNETR for 3D medical imaging (the library)."""
