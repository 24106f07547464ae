"""Internals of the synthetic cohort generator (public API: :mod:`lsemvae.data.synthetic`)."""
