"""The console (csbs-console): the product page's steps in a browser, over the gRPC API."""
