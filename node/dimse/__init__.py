"""DIMSE: the SCP the PACS and modalities send to (scp), and the node as SCU: one
association helper (association) that scu, priors and studies use for every request."""
