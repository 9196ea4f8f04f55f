"""One row per run of a soak receiver that took effect: never unique, so that a double
delivery shows as two rows instead of hiding behind a constraint."""

from __future__ import annotations

from django.db import models


class Effect(models.Model):
    receiver = models.CharField(max_length=40)
    transition_id = models.BigIntegerField()
    signal = models.CharField(max_length=40)
    payment_id = models.BigIntegerField()
    refund_id = models.BigIntegerField(null=True)
    pid = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    # Declared, for type checkers run with settings that do not install this app.
    objects: models.Manager[Effect] = models.Manager()

    def __str__(self) -> str:
        return f"{self.receiver} {self.signal} of transition {self.transition_id}"
