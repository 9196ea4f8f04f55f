"""The soak project of bench/soak_delivery.py: receivers that count their effects."""
