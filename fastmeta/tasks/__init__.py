"""Task families: generators of TabularMDP lists and feature maps."""
