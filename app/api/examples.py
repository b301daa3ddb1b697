"""The original service's README payloads, shown on the /docs page and kept working."""

CAR_URL = (
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/"
    "transformers/tasks/car.jpg?download=true"
)

INFER_EXAMPLES = {
    "single_url": {
        "summary": "Single image (URL)",
        "value": {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": [CAR_URL]},
                {"name": "pooling_strategy", "shape": [1], "datatype": "BYTES", "data": ["mean"]},
            ]
        },
    },
    "single_base64": {
        "summary": "Single image (Base64)",
        "value": {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": ["data:image/jpeg;base64,/9j/4AAQSkZJRgABAQEA..."],
                }
            ]
        },
    },
    "batch": {
        "summary": "Multiple images batch",
        "value": {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [
                        "https://example.com/path/to/image1.jpg",
                        "https://example.com/path/to/image2.jpg",
                    ],
                },
                {"name": "include_raw", "shape": [1], "datatype": "BYTES", "data": ["true"]},
            ]
        },
    },
}
