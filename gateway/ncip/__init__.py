"""The NCIP relay: a journal of checkout/checkin entries, relayed in order to ALEPH's NCIP server."""
