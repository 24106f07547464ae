"""Flower ServerApp for federated fine-tuning of LS-EMVAE (see server_app.py)."""
