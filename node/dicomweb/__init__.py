"""DICOMweb client side: QIDO-RS queries to the PACS (dicomweb-client)."""
