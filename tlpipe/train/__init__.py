"""Learning: frozen features, the head on them, end-to-end fine-tuning and its augmentation."""
