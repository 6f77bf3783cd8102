"""What admins and staff read: `status` (the service and the ledger now) and `find` ("where is my item?"),
for the commands and the staff page."""
