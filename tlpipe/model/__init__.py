"""The trained model: backbones, heads, the classifier, its file, inference and the decision rule."""
