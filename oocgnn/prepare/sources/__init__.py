"""Graph sources: each streams one dataset's nodes, edges, features, labels and splits."""
