"""peft_bench's Hydra configs (config.yaml and one folder per group), importable as peft_bench.conf so that
the installed package finds them where an editable checkout does."""
