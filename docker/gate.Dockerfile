# tuneforge-gate (services/gate): the overload gate the chart runs beside each service, in its pod.
# A static Go binary FROM scratch, built by `make images` (docker/images.sh gate) from a context
# holding only the binary (CGO_ENABLED=0 build of services/gate, cached by the hash of its sources).
# The chart passes every flag (listen, backend, limits, the service's streaming methods).
FROM scratch
COPY tuneforge-gate /tuneforge-gate
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["/tuneforge-gate"]
