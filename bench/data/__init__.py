"""Cohorts: dataset specs, clinical sources, slide discovery, the demo cohort, the split manager."""
