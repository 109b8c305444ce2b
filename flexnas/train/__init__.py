"""Supernet training: one loop (`Trainer`), pluggable strategies, atomic checkpoints."""
from flexnas.train import strategies
from flexnas.train.checkpoint import check_meta, load_checkpoint, save_checkpoint
from flexnas.train.optim import LrSchedule, build_optimizer, build_scheduler, param_groups
from flexnas.train.strategies import StepContext, Strategy
from flexnas.train.trainer import Batches, TrainConfig, Trainer, prepare_input, tensorboard_writer

__all__ = [
    "Batches", "LrSchedule", "StepContext", "Strategy", "TrainConfig", "Trainer", "build_optimizer",
    "build_scheduler", "check_meta", "load_checkpoint", "param_groups", "prepare_input", "save_checkpoint",
    "strategies", "tensorboard_writer",
]
