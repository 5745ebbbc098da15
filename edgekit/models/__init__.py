"""Reference detectors, their training loop, and loading of users' models."""
