# The dev profile's S3 server: versitygw (Apache-2.0; MinIO's module is refused by the Go proxy
# here), a static Go binary FROM scratch. Built by `make images` (docker/images.sh s3) from a
# context holding only the binary (CGO_ENABLED=0 build of github.com/versity/versitygw, cached).
# Credentials come from the environment at run time (ROOT_ACCESS_KEY_ID, ROOT_SECRET_ACCESS_KEY).
FROM scratch
COPY versitygw /versitygw
USER 10001:10001
EXPOSE 9000
ENTRYPOINT ["/versitygw"]
CMD ["--port", ":9000", "posix", "/data"]
