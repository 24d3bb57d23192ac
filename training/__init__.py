"""Training, evaluation and export of the emotion model (uses only `common` from the project)."""
