"""nn.Modules only: the Swin UNETR wrapper, SSL heads and weight transfer."""
