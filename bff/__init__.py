"""vluna-bff: signs users in, maps them to Vluna principals, hands out cached platform tokens."""
