"""The demo: the generated shapes world, the bundled tiny CLIP trained on it, and `clipline demo`."""
