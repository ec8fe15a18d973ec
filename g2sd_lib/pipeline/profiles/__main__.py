from ...errors import run_main
from . import main

run_main(main)
