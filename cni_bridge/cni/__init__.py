"""CNI front end: environment + stdin -> request; result/error JSON per spec version."""
