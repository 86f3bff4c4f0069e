"""The job loop: wires studies, imaging, inference, results and dispatch together."""
