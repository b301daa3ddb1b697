"""The original service's README payloads, shown on the /docs page and kept working."""

CAR_URL = (
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/"
    "transformers/tasks/car.jpg?download=true"
)

# A 96x64 JPEG of scikit-image's cat photo: the first example works as it is ("Try it out"
# against the embedded default model returns an embedding), with no network.
CAT_JPEG_BASE64 = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAoHBwgHBgoICAgLCgoLDhgQDg0NDh0VFhEYIx8lJCIfIiEmKzcvJik0KSEiMEEx"
    "NDk7Pj4+JS5ESUM8SDc9Pjv/2wBDAQoLCw4NDhwQEBw7KCIoOzs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7"
    "Ozs7Ozs7Ozs7Ozs7Ozv/wAARCABAAGADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAA"
    "AgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6"
    "Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXG"
    "x8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREA"
    "AgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5"
    "OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPE"
    "xcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwC/eWy2yNIh+UDNc15st1OqhTxwWPTNdnq1"
    "oq6fOcE5U8VzdlALYFHZSSMgHrXHV0aO6my1HKtugto03EDPOMCqMtwWcqCWY4yq8Ae1PkXZhFAy5xjb1H1pPsrmLy4Rln44"
    "9P6Vk5GiKMqxqS0hCP32nOPb/PrVpMGOWIqy7gRuPIH5VWkgmjCSEchsE85Bq1fFo7ZCrbWZwM96ExWM77OZdMtnRvNMIKs7"
    "DBUfT0plm00bmSN28jbtKnJ5HQ/0rVvoHimh27l+0wMrBexHOaqRQtOLa3WRikswO5T2C5x+dO9xWsX9PkNxwWCsDyM1blcK"
    "SueR1JPSq1oiIsjgEuh+bI96fcGON2mlYFSPlx3q4NrRDVuph6uTfMIgCIkOf94+tZR0xP7tb6eXNyKX7OD2rSzMm7vU6zXr"
    "lFsWUvhjjAzXIXl4sZCNhpm+6o5OadaPPqStNdSEl84GeAKvaZplrgSL+8k7uxyQayqPmZcFZFK1ivkZVuLt9sgzjAIFXNUm"
    "vrL7Lb2kkIa4YjzGTO0AZJqxqaMgCooIAyvsaoyTPdwpDIVSaJ98DnpnHKt6ZGRWLumadDH1TV9R066SNbtJpGAO10HQnHb3"
    "rVsLxNY8qORfKuLchnj6gjsR7Vj6pYWZ1SO8u5pLdkXBjZCScehAwadol6kniqN0RkjkjMfzccdvxrSykkZQclLU6y52XDYc"
    "bWQHafTPFOS1gggjJXaYnDA+9NvYdspK98U65nCwbh82yMvj6Cotqa9CJTFBc3TPIkcbkbd7Y+tTLbJMFD4ZP4WByK4ixM+o"
    "a1dPfBiiKd7P90Drx6cV2Gjac8en2yGYorKDsI6VrFcskjLm5k2QapDDYIGQAc9qq21wsy5PFbmoeGzfKMT9OetZM+g6jaLi"
    "MbxXQzNK5WtIGto9qtu24BJ71JG09lfE25wJRnYehqSwlDTsH4DjGDVm9stycNjHIOelcrTaubp20KV9qF5KPLa2ZT6ntUQm"
    "wMy7Bj0q1BO+7yZ3XI6EnrV77FDKgBjX9KnluXdFO2uZFXy1Icf3WGf/ANVZWoxSR30d2oHmqwI9vb6VtywxQsApwRzhjiqc"
    "8EdzGzYYkZXaVIzWLaRcU2Xbe6+1gM5BOOcU3Wle2sNyZxKuxsdQM9vwrD0y48q4aIsNoPA7Vs6zP5unQKj8kgMPxqU3cbS2"
    "Kq2FqhzNdT3KrhvKICqT23EDmpZr64d/Mc4A4VRwBTI4ZZsH7qrw1bEOl2t3EoRwCOozXXSjc5ptLQxf7SvEbekzY9Ktx6rr"
    "Mihgm5O2RV280eG3CFTwDz71q26xrEqBR0ros0ZXOHt5Gt7xX3LkHGPausRFngGVyCK5m2RLjbJg+vIrqrVl8pQPSsIPSxtL"
    "uZ11pgkThVBHIYjpTLKaSFhHcHdj+NUwta8gBGcZqlNEGOTyRTcQuV72YMrB/JlyCMSLjim6dGqux2gKT0WTI6enaiZNykHP"
    "NUnSZCdrA/UVl7LU059DL8S6VFpky31mUWCR8SK/IUn09Kk0m0luYhe3MjLAgzGmT83/ANapprSa+RY5cNHkEr2OKuGF1VQ8"
    "uFHYVpKKsSpNKxNaRIlsWJyGbJ4Ip8GyKVpomYseig1JbWklwAkZxH3zWrb2MNpHwuW7k04KxlJ3ZlzX7XjxRYIdTlga2rdS"
    "IwWHNYA1C3g1lo/LLO3Ax61tLNcdTGqD/aat0Zn/2Q=="
)

NEEDS_EGRESS = "needs the server to reach the internet"

INFER_EXAMPLES = {
    "inline_photo": {
        "summary": "A real photo, inline as a data URI, normalised",
        "value": {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": ["data:image/jpeg;base64," + CAT_JPEG_BASE64],
                },
                {"name": "normalize", "shape": [1], "datatype": "BYTES", "data": ["true"]},
            ]
        },
    },
    "single_base64": {
        "summary": "Single image (bare Base64), mean pooling",
        "value": {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": [CAT_JPEG_BASE64]},
                {"name": "pooling_strategy", "shape": [1], "datatype": "BYTES", "data": ["mean"]},
            ]
        },
    },
    "batch": {
        "summary": "A batch of two images, with the raw embeddings as a second output",
        "value": {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": ["data:image/jpeg;base64," + CAT_JPEG_BASE64, CAT_JPEG_BASE64],
                },
                {"name": "include_raw", "shape": [1], "datatype": "BYTES", "data": ["true"]},
            ]
        },
    },
    "single_url": {
        "summary": f"Single image by URL ({NEEDS_EGRESS})",
        "value": {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": [CAR_URL]},
                {"name": "pooling_strategy", "shape": [1], "datatype": "BYTES", "data": ["mean"]},
            ]
        },
    },
}
