"""ExampleGen: validate the raw events and split them into train/eval/test examples."""

from components.example_gen.component import build, example_gen

__all__ = ["build", "example_gen"]
