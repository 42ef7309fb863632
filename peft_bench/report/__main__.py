"""python -m peft_bench.report DIR [DIR ...]: the report of one or more sweeps (peft_bench.report.main)."""

from peft_bench.report import main

if __name__ == "__main__":
    main()
