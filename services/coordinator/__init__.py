"""The coordinator service: joins inference refs with their outcomes into training jobs."""
