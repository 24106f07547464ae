"""Code shared by the Flower ServerApp (``server/``) and ClientApp (``client/``).

``keys`` names every record and metric key once; ``groups`` splits a state_dict into the
parameter groups that are federated (``encoders.<lead>``, ``fusion``, ``heads.<task>``).
"""
