"""What the generation tests share: a model that records what its UNet is conditioned on."""
from __future__ import annotations

import numpy as np


class ConditioningSpy:
    """The model (its attributes, or ``attributes`` in their place), recording the text states of each UNet call."""

    def __init__(self, model, **attributes):
        self._model, self.states = model, []
        self.__dict__.update(attributes)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def unet(self, sample, timestep, encoder_hidden_states):
        self.states.append(np.array(encoder_hidden_states))
        return self._model.unet(sample, timestep, encoder_hidden_states)
