"""`make bench` (`python -m maxproxy.bench`), and the two parts it shares with the test suite: the fake Anthropic
Messages API the real CLI talks to (`upstream`) and maxproxy run as a daemon process (`daemon`). They live in the
package, not under `tests/`, so that the benchmark never imports the tests; nothing in maxproxy imports them."""
