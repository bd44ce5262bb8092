"""``dyngrad.optim``: SGD, Adam, AdamW, RMSprop, Adadelta, Adagrad, LBFGS (eager
only) and learning-rate schedules."""

from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .lbfgs import LBFGS
from .optimizer import Optimizer, ParamGroup
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "ParamGroup", "SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad",
           "LBFGS", "lr_scheduler"]
