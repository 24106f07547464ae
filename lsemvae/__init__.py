"""LS-EMVAE: lead-specific multimodal VAE for ECG, trained federated with differential privacy."""

__version__ = "0.1.0"
