"""Reporting: the results store and unit records, tables, statistics, figures."""
