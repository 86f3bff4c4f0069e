"""DICOMweb client side (dicomweb-client): one client factory, QIDO-RS searches and counts,
STOW-RS results; failures are ``node.pacs_errors``'."""
