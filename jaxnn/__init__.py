"""jaxnn: the fundamentals of training neural networks in JAX, every gradient derived by hand
and proven equal to ``jax.grad``.

Importing jaxnn registers every component's hand-derived gradient with the checker
(``jaxnn gradcheck`` audits them all).
"""

from jaxnn import activations as activations
from jaxnn import backprop as backprop
from jaxnn import batchnorm as batchnorm
from jaxnn import gradcheck as gradcheck
from jaxnn import layers as layers
from jaxnn import losses as losses
from jaxnn import train as train
from jaxnn.backprop import manual as manual
from jaxnn.backprop import value_and_grad as value_and_grad
from jaxnn.batchnorm import BatchNormState as BatchNormState
from jaxnn.gradcheck import GradientMismatchError as GradientMismatchError
from jaxnn.gradcheck import check_gradients as check_gradients
from jaxnn.layers import Layer as Layer
from jaxnn.layers import activation as activation
from jaxnn.layers import dense as dense
from jaxnn.layers import mlp as mlp
from jaxnn.layers import serial as serial

__version__ = "0.1.0"
