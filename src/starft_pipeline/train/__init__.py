"""Fine-tuning and pretraining: config, loop, engine, losses, teacher modes, checkpoints. No Kedro."""
