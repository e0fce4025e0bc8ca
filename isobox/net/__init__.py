"""isobox networks: bridges, addresses, DNS, published ports, isolation between networks."""
