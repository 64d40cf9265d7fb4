"""Research scripts with hard-coded data paths (the EVALUATION.md tables); the library never
imports this package."""
