"""On-policy data: ``probes generate CONFIG`` / :func:`generate_dataset` answer a contrast dataset's prompts
with the model's own replies and write them as a new dataset folder (see :mod:`probes.generate.core`)."""

from probes.generate.core import SamplingSettings, generate_dataset, prompt_messages, render_prompt

__all__ = ["SamplingSettings", "generate_dataset", "prompt_messages", "render_prompt"]
