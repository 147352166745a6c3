// segedge browser client: see README
