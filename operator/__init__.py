"""chronoshard control plane: Kopf handlers and the pure manifest builders they use."""
