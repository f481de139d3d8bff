"""`python -m korani_cli ...` — the form the DeepSpeed/accelerate launchers run."""

from korani_cli.cli import main

if __name__ == "__main__":
    main()
