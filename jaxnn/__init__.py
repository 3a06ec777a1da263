"""jaxnn: the fundamentals of training neural networks in JAX, every gradient derived by hand
and proven equal to ``jax.grad``.

Importing jaxnn has no side effects: the gradient audit is the explicit list in
:mod:`jaxnn.audit` (``jaxnn gradcheck`` runs it).
"""

from jaxnn import activations as activations
from jaxnn import backprop as backprop
from jaxnn import batchnorm as batchnorm
from jaxnn import checkpoint as checkpoint
from jaxnn import combinators as combinators
from jaxnn import conv as conv
from jaxnn import data as data
from jaxnn import debug as debug
from jaxnn import evaluation as evaluation
from jaxnn import fitting as fitting
from jaxnn import gradcheck as gradcheck
from jaxnn import initializers as initializers
from jaxnn import layers as layers
from jaxnn import losses as losses
from jaxnn import metrics as metrics
from jaxnn import networks as networks
from jaxnn import norms as norms
from jaxnn import optim as optim
from jaxnn import parallel as parallel
from jaxnn import pooling as pooling
from jaxnn import recurrent as recurrent
from jaxnn import regularization as regularization
from jaxnn import run as run
from jaxnn import statistics as statistics
from jaxnn import train as train
from jaxnn._typing import Layer as Layer
from jaxnn._typing import bind_backward as bind_backward
from jaxnn._version import __version__ as __version__
from jaxnn.backprop import manual as manual
from jaxnn.backprop import value_and_grad as value_and_grad
from jaxnn.batchnorm import BatchNormState as BatchNormState
from jaxnn.combinators import intermediates as intermediates
from jaxnn.combinators import residual as residual
from jaxnn.combinators import serial as serial
from jaxnn.conv import conv2d as conv2d
from jaxnn.evaluation import evaluate as evaluate
from jaxnn.evaluation import predict as predict
from jaxnn.fitting import DivergenceWarning as DivergenceWarning
from jaxnn.fitting import FitResult as FitResult
from jaxnn.fitting import fit as fit
from jaxnn.gradcheck import GradientMismatchError as GradientMismatchError
from jaxnn.gradcheck import check_gradients as check_gradients
from jaxnn.layers import activation as activation
from jaxnn.layers import dense as dense
from jaxnn.layers import dropout as dropout
from jaxnn.layers import flatten as flatten
from jaxnn.layers import reshape as reshape
from jaxnn.networks import cnn as cnn
from jaxnn.networks import mlp as mlp
from jaxnn.norms import groupnorm as groupnorm
from jaxnn.norms import layernorm as layernorm
from jaxnn.norms import rmsnorm as rmsnorm
from jaxnn.optim import sgd as sgd
from jaxnn.pooling import avg_pool as avg_pool
from jaxnn.pooling import global_avg_pool as global_avg_pool
from jaxnn.pooling import max_pool as max_pool
from jaxnn.recurrent import elman_cell as elman_cell
from jaxnn.recurrent import embedding as embedding
from jaxnn.recurrent import gru_cell as gru_cell
from jaxnn.recurrent import lstm_cell as lstm_cell
from jaxnn.recurrent import recurrent_layer as recurrent_layer
from jaxnn.regularization import l1 as l1
from jaxnn.regularization import l2 as l2
from jaxnn.train import TrainState as TrainState
from jaxnn.train import make_epoch as make_epoch
from jaxnn.train import make_train_step as make_train_step
