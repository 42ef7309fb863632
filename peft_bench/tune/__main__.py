"""`python -m peft_bench.tune ...`: the command (peft_bench.tune.command.main). SLURM jobs are pickled by
reference to peft_bench.tune.workers / finals, never to this __main__."""

from peft_bench.tune.command import main

main()
