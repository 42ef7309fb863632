"""`python -m peft_bench ...` and the `peft-bench` console script: one run, or a sweep with -m."""

from peft_bench.train import main

if __name__ == "__main__":
    main()
